//! The voice gateway driving the **real** `claude` CLI (2.1.330, installed by `.ci/run` into
//! `.tools/claude`) against the project's loopback fake of the Anthropic Messages API.
//!
//! Where the CLI is not installed these tests say so and pass, unless `AFK_REQUIRE_REAL_CLI=1`
//! (set by `.ci/run`), where a missing CLI fails them.

mod sidecar_support;

use std::{path::PathBuf, time::Duration};

use afk_testkit::anthropic::{FakeAnthropic, Reply};
use serde_json::{Value, json};
use sidecar_support::{Sidecar, sse_events};

const API_KEY: &str = "sk-ant-test-key";

fn real_cli() -> Option<PathBuf> {
    let candidate = std::env::var_os("AFK_CLAUDE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/.tools/claude/node_modules/.bin/claude"
            ))
        });
    if candidate.exists() {
        return Some(candidate);
    }
    assert!(
        std::env::var("AFK_REQUIRE_REAL_CLI").as_deref() != Ok("1"),
        "the real claude CLI is required but not at {}",
        candidate.display()
    );
    eprintln!(
        "SKIPPED: the real claude CLI is not installed at {}",
        candidate.display()
    );
    None
}

async fn start(fake: &FakeAnthropic, flags: &[&str], retries: &str) -> Option<Sidecar> {
    let cli = real_cli()?;
    let base = fake.served.url();
    Some(
        Sidecar::start(
            &cli,
            &[
                ("ANTHROPIC_BASE_URL", base.as_str()),
                ("ANTHROPIC_API_KEY", API_KEY),
                ("CLAUDE_CODE_MAX_RETRIES", retries),
            ],
            flags,
        )
        .await,
    )
}

fn last_user_text(request: &Value) -> String {
    let last = request["messages"]
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .find(|m| m["role"] == "user")
        .unwrap();
    match &last["content"] {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts.iter().filter_map(|p| p["text"].as_str()).collect(),
        _ => String::new(),
    }
}

#[tokio::test]
async fn streamed_text_arrives_intact_with_usage() {
    let fake = FakeAnthropic::start(API_KEY, Reply::text(&["unused"])).await;
    fake.script([Reply::Text {
        chunks: ["Hel", "lo, ", "wörld", " — ", "ok ", "🙂"]
            .iter()
            .map(|s| s.to_string())
            .collect(),
        input_tokens: 21,
        output_tokens: 9,
        first_delay: Duration::ZERO,
    }]);
    let Some(sc) = start(&fake, &[], "0").await else {
        return;
    };
    let body = sc
        .post(
            "/v1/chat/completions",
            json!({"model": "sonnet", "stream": true, "stream_options": {"include_usage": true},
                   "messages": [{"role": "user", "content": "say hello"}]}),
        )
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let events = sse_events(&body);
    assert_eq!(events.last().unwrap().1, "[DONE]", "{body}");
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|(_, d)| serde_json::from_str(d).unwrap())
        .collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, "Hello, wörld — ok 🙂");
    let usage = &chunks.last().unwrap()["usage"];
    assert_eq!(usage["completion_tokens"], 9);
    assert_eq!(usage["prompt_tokens"], 21);
    let requests = fake.message_requests();
    assert_eq!(requests.len(), 1, "one model request for one turn");
    assert_eq!(last_user_text(&requests[0]).trim(), "say hello");
    assert_eq!(
        requests[0]["tools"].as_array().map_or(0, Vec::len),
        0,
        "no tools offered to the model"
    );
    let system = requests[0]["system"].to_string();
    assert!(
        system.contains("You are a voice assistant"),
        "the conversational agent's prompt is used"
    );
}

#[tokio::test]
async fn non_streaming_completion_from_the_real_cli() {
    let fake = FakeAnthropic::start(API_KEY, Reply::text(&["Four", "."])).await;
    let Some(sc) = start(&fake, &[], "0").await else {
        return;
    };
    let body: Value = sc
        .post_json(
            "/v1/chat/completions",
            json!({"model": "haiku", "messages": [{"role": "user", "content": "2+2?"}]}),
        )
        .await;
    assert_eq!(body["choices"][0]["message"]["content"], "Four.");
    assert_eq!(body["usage"]["completion_tokens"], 2);
}

#[tokio::test]
async fn conversational_resume_sends_the_earlier_turns() {
    let fake = FakeAnthropic::start(API_KEY, Reply::text(&["fallback"])).await;
    fake.script([
        Reply::text(&["Nice to ", "meet you, Ada."]),
        Reply::text(&["Your name is Ada."]),
    ]);
    // No kept processes: every turn is a fresh CLI, turn two by `--resume`.
    let Some(sc) = start(&fake, &["--live-sessions", "0"], "0").await else {
        return;
    };
    let id = "0f8fad5b-d9cb-469f-a165-70867728950e";
    let one: Value = sc
        .post_json(
            "/v1/conversational",
            json!({"session_id": id, "message": "My name is Ada."}),
        )
        .await;
    assert_eq!(one["reply"], "Nice to meet you, Ada.");
    let two: Value = sc
        .post_json(
            "/v1/conversational",
            json!({"session_id": id, "message": "What is my name?"}),
        )
        .await;
    assert_eq!(two, json!({"session_id": id, "reply": "Your name is Ada."}));
    let requests = fake.message_requests();
    let second = serde_json::to_string(&requests.last().unwrap()["messages"]).unwrap();
    assert!(
        second.contains("My name is Ada."),
        "the resumed turn carries the first: {second}"
    );
    assert!(second.contains("Nice to meet you, Ada."));
    assert!(second.contains("What is my name?"));
}

#[tokio::test]
async fn a_live_conversation_answers_turn_two_from_the_same_process_with_turn_one_in_context() {
    let fake = FakeAnthropic::start(API_KEY, Reply::text(&["fallback"])).await;
    fake.script([Reply::text(&["Hi ", "Grace."]), Reply::text(&["You are Grace."])]);
    let Some(sc) = start(&fake, &[], "0").await else {
        return;
    };
    let id = "5d3c1b2a-0f4e-4d6c-8b7a-9e8f7a6b5c4d";
    let one: Value = sc
        .post_json(
            "/v1/conversational",
            json!({"session_id": id, "message": "I am Grace."}),
        )
        .await;
    assert_eq!(one["reply"], "Hi Grace.");
    let two: Value = sc
        .post_json(
            "/v1/conversational",
            json!({"session_id": id, "message": "Who am I?"}),
        )
        .await;
    assert_eq!(two["reply"], "You are Grace.");
    assert_eq!(sc.turn_starts("cold").await, 1, "one process for the session");
    assert_eq!(
        sc.turn_starts("live").await,
        1,
        "turn two went to the live process"
    );
    let requests = fake.message_requests();
    let second = serde_json::to_string(&requests.last().unwrap()["messages"]).unwrap();
    assert!(
        second.contains("I am Grace.") && second.contains("Hi Grace."),
        "{second}"
    );
    assert!(second.contains("Who am I?"));
}

#[tokio::test]
async fn warm_chat_processes_of_the_real_cli_serve_one_request_each() {
    let fake = FakeAnthropic::start(API_KEY, Reply::text(&["fallback"])).await;
    fake.script([Reply::text(&["first answer"]), Reply::text(&["second answer"])]);
    let Some(sc) = start(&fake, &[], "0").await else {
        return;
    };
    let voice = sc.state.voice.clone().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while voice.warm_processes() == 0 {
        assert!(std::time::Instant::now() < deadline, "no warm process");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for (question, answer) in [
        ("alpha question", "first answer"),
        ("beta question", "second answer"),
    ] {
        let completion: Value = sc
            .post_json(
                "/v1/chat/completions",
                json!({"model": "sonnet", "messages": [{"role": "user", "content": question}]}),
            )
            .await;
        assert_eq!(
            completion["choices"][0]["message"]["content"], answer,
            "{completion}"
        );
    }
    assert!(
        sc.turn_starts("warm").await >= 1,
        "served by a process started ahead"
    );
    let requests = fake.message_requests();
    let last = serde_json::to_string(&requests.last().unwrap()["messages"]).unwrap();
    assert!(last.contains("beta question"));
    assert!(
        !last.contains("alpha question") && !last.contains("first answer"),
        "nothing of one request reaches another: {last}"
    );
}

/// The adapter's side of the stream-json input contract (docs/claude-cli-stream-input.md),
/// against the real binary: nothing before the first message, one `init` … `result` per
/// message on one process, exit 0 on end of input; a malformed line ends it without a result.
#[tokio::test]
async fn the_real_cli_takes_one_message_per_line_and_exits_on_end_of_input() {
    use afk_operator::adapters::claude::{
        AgentCli, AgentSpec, ClaudeCli, CliEvent, SessionMode, TurnItem, TurnRequest,
    };
    let fake = FakeAnthropic::start(API_KEY, Reply::text(&["fallback"])).await;
    fake.script([Reply::text(&["one"]), Reply::text(&["two"])]);
    let Some(program) = real_cli() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let cli = ClaudeCli::new(program, dir.path().join("home"), None)
        .with_env("ANTHROPIC_BASE_URL", &fake.served.url())
        .with_env("ANTHROPIC_API_KEY", API_KEY)
        .with_env("CLAUDE_CODE_MAX_RETRIES", "0");
    let request = TurnRequest {
        prompt: String::new(),
        model: "sonnet".into(),
        agent: std::sync::Arc::new(AgentSpec {
            name: "conversational".into(),
            description: "voice".into(),
            prompt: "Be brief.".into(),
            tools: Some(vec![]),
        }),
        session: SessionMode::Stateless,
        cwd: dir.path().join("work"),
        max_budget_usd: None,
        allowed_tools: vec![],
    };
    let mut turn = cli.start_waiting(&request).await.unwrap();
    // Waiting: no output, and the process stays.
    let quiet = tokio::time::timeout(Duration::from_millis(300), turn.next()).await;
    assert!(quiet.is_err(), "nothing before the first message: {quiet:?}");
    assert!(turn.is_alive());
    let mut kinds = Vec::new();
    for message in ["first", "second"] {
        turn.send(message).await.unwrap();
        loop {
            match tokio::time::timeout(Duration::from_secs(60), turn.next())
                .await
                .unwrap()
            {
                Some(TurnItem::Event(CliEvent::Init { .. })) => kinds.push("init".to_string()),
                Some(TurnItem::Event(CliEvent::TextDelta(text))) => kinds.push(format!("text:{text}")),
                Some(TurnItem::Event(CliEvent::Result(result))) => {
                    assert!(result.failure().is_none(), "{result:?}");
                    kinds.push("result".into());
                    break;
                }
                Some(TurnItem::Event(_)) => {}
                other => panic!("the process ended mid-session: {other:?}"),
            }
        }
    }
    assert_eq!(
        kinds,
        ["init", "text:one", "result", "init", "text:two", "result"]
    );
    turn.end_input();
    let end = tokio::time::timeout(Duration::from_secs(30), turn.next())
        .await
        .unwrap();
    assert!(
        matches!(end, Some(TurnItem::Ended(Ok(())))),
        "clean exit on end of input: {end:?}"
    );
    assert_eq!(fake.message_requests().len(), 2, "one model request per message");
}

#[tokio::test]
async fn an_api_error_becomes_a_503() {
    let fake = FakeAnthropic::start(
        API_KEY,
        Reply::Error {
            status: 529,
            kind: "overloaded_error".into(),
        },
    )
    .await;
    let Some(sc) = start(&fake, &[], "0").await else {
        return;
    };
    let resp = sc
        .post(
            "/v1/chat/completions",
            json!({"model": "sonnet", "stream": true, "messages": [{"role": "user", "content": "hi"}]}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    assert!(resp.headers().contains_key("retry-after"));
    let err: Value = resp.json().await.unwrap();
    assert_eq!(err["error"]["code"], "upstream_error");
    assert_eq!(err["error"]["message"], "the model API answered 529");
}

#[tokio::test]
async fn a_budget_overrun_becomes_a_402() {
    let fake = FakeAnthropic::start(API_KEY, Reply::text(&["x"])).await;
    fake.script([Reply::Text {
        chunks: vec!["expensive".into()],
        input_tokens: 2_000_000,
        output_tokens: 100_000,
        first_delay: Duration::ZERO,
    }]);
    let Some(sc) = start(&fake, &["--chat-max-budget-usd", "0.01"], "0").await else {
        return;
    };
    let resp = sc
        .post(
            "/v1/chat/completions",
            json!({"model": "sonnet", "messages": [{"role": "user", "content": "hi"}]}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 402);
    let err: Value = resp.json().await.unwrap();
    assert_eq!(err["error"]["code"], "budget_exceeded");
    assert_eq!(err["error"]["type"], "insufficient_quota");
}

#[tokio::test]
async fn a_breakglass_turn_with_the_real_cli_translates_its_events() {
    let fake = FakeAnthropic::start(API_KEY, Reply::text(&["unused"])).await;
    fake.script([Reply::text(&["Node-2 is ", "NotReady: kubelet stopped."])]);
    let Some(sc) = start(&fake, &[], "0").await else {
        return;
    };
    let created = sc.post_json("/api/breakglass/sessions", json!({})).await;
    let id = created["session_id"].as_str().unwrap().to_string();
    let status = sc
        .post(
            &format!("/api/breakglass/sessions/{id}/prompt"),
            json!({"prompt": "why is node-2 down?", "model": "sonnet"}),
        )
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 202);
    let resp = sc
        .get(&format!("/api/breakglass/sessions/{id}/stream"))
        .send()
        .await
        .unwrap();
    let mut reader = sidecar_support::SseReader::new(resp);
    let mut kinds = Vec::new();
    let mut texts = Vec::new();
    while let Some(event) = tokio::time::timeout(Duration::from_secs(30), reader.next())
        .await
        .unwrap()
    {
        if event.event == "text" {
            texts.push(event.data["text"].as_str().unwrap().to_string());
        }
        if event.event == "session" {
            assert_eq!(
                event.data["session_id"],
                id.as_str(),
                "the CLI runs the session we own"
            );
        }
        let end = event.event == "turn_end";
        if event.event != "caught-up" {
            kinds.push(event.event);
        }
        if end {
            break;
        }
    }
    assert_eq!(kinds, ["user", "session", "text", "result", "turn_end"]);
    assert_eq!(
        texts,
        ["Node-2 is NotReady: kubelet stopped."],
        "one whole assistant text block"
    );
    let system = fake.message_requests()[0]["system"].to_string();
    assert!(
        system.contains("recovery assistant"),
        "the breakglass agent's prompt is used"
    );
}
