//! Breakglass sessions over real HTTP with the fake `claude` script: replay and `Last-Event-ID`
//! resume across many random disconnects lose and duplicate nothing; a cursor older than the
//! log resyncs; turns run detached; 409 / 404 / cancel; a stalled subscriber costs bounded memory;
//! the session cap evicts; shutdown ends streams.

mod sidecar_support;

use std::time::Duration;

use serde_json::{Value, json};
use sidecar_support::{Sidecar, SseEvent, SseReader, fake_claude, wait_group_gone};

async fn create(sc: &Sidecar) -> String {
    let resp = sc
        .post("/api/breakglass/sessions", json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    resp.json::<Value>().await.unwrap()["session_id"]
        .as_str()
        .unwrap()
        .to_string()
}

async fn prompt(sc: &Sidecar, id: &str, text: &str) -> reqwest::StatusCode {
    sc.post(
        &format!("/api/breakglass/sessions/{id}/prompt"),
        json!({"prompt": text}),
    )
    .send()
    .await
    .unwrap()
    .status()
}

async fn attach(sc: &Sidecar, id: &str, last_event_id: Option<u64>) -> SseReader {
    let mut req = sc.get(&format!("/api/breakglass/sessions/{id}/stream"));
    if let Some(cursor) = last_event_id {
        req = req.header("Last-Event-ID", cursor.to_string());
    }
    let resp = req.send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    SseReader::new(resp)
}

/// Read until `turn_end` (or the stream ends), returning everything.
async fn read_turn(reader: &mut SseReader) -> Vec<SseEvent> {
    let mut events = Vec::new();
    while let Some(event) = tokio::time::timeout(Duration::from_secs(20), reader.next())
        .await
        .unwrap()
    {
        let end = event.event == "turn_end";
        events.push(event);
        if end {
            break;
        }
    }
    events
}

async fn wait_turn_end(sc: &Sidecar, id: &str) {
    for _ in 0..500 {
        let list: Value = sc.get_json("/api/breakglass/sessions").await;
        let s = list["sessions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["session_id"] == id)
            .unwrap()
            .clone();
        if s["running"] == false && s["last_event_id"].as_u64().unwrap() > 1 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("turn did not end");
}

#[tokio::test]
async fn a_turn_streams_the_event_vocabulary_with_ids_then_replays_for_late_subscribers() {
    let sc = Sidecar::start(
        &fake_claude(),
        &[
            ("CLAUDE_CODE_FAKE_MODE", "chatty"),
            ("CLAUDE_CODE_FAKE_MESSAGES", "3"),
        ],
        &[],
    )
    .await;
    let id = create(&sc).await;
    let mut live = attach(&sc, &id, None).await;
    let caught_up = live.next().await.unwrap();
    assert_eq!(
        caught_up.event, "caught-up",
        "an empty session is caught up at once"
    );
    assert_eq!(prompt(&sc, &id, "why is the node NotReady?").await, 202);
    let events = read_turn(&mut live).await;
    let kinds: Vec<&str> = events.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(
        kinds,
        [
            "user", "session", "tool", "text", "text", "text", "result", "turn_end"
        ]
    );
    assert!(events.iter().all(|e| e.id.is_some()), "every event has an id");
    assert_eq!(
        events[0].data,
        json!({"type": "user", "text": "why is the node NotReady?"})
    );
    assert_eq!(events[1].data["session_id"], id.as_str());
    assert_eq!(
        events[2].data,
        json!({"type": "tool", "name": "Bash", "input": {"command": "kubectl get nodes"}})
    );
    assert_eq!(events[3].data["text"], "msg 0");
    assert_eq!(events[6].data["is_error"], false);
    assert_eq!(events[6].data["result"], "msg 2");
    assert!(events[6].data["duration_ms"].is_u64());
    drop(live);

    // The breakglass agent, its tools left to the CLI, prompt on stdin, the session id opened.
    let run = &sc.wait_runs(1).await[0];
    let argv: Vec<&str> = run["argv"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert!(argv.windows(2).any(|w| w == ["--agent", "breakglass"]));
    assert!(argv.windows(2).any(|w| w == ["--session-id", id.as_str()]));
    assert!(!argv.iter().any(|a| a.contains("dangerously")));
    assert_eq!(run["stdin"], "why is the node NotReady?");

    // A late subscriber gets the same events, then caught-up.
    let mut late = attach(&sc, &id, None).await;
    let mut replay = Vec::new();
    loop {
        let e = late.next().await.unwrap();
        if e.event == "caught-up" {
            break;
        }
        replay.push(e);
    }
    assert_eq!(replay, events);

    // The second turn resumes the CLI session.
    assert_eq!(prompt(&sc, &id, "and now?").await, 202);
    let second = read_turn(&mut late).await;
    assert_eq!(
        second.first().unwrap().id,
        Some(events.last().unwrap().id.unwrap() + 1)
    );
    let runs = sc.wait_runs(2).await;
    let argv: Vec<&str> = runs[1]["argv"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert!(argv.windows(2).any(|w| w == ["--resume", id.as_str()]));
}

/// A tiny deterministic generator (no extra dependency).
struct XorShift(u64);

impl XorShift {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

#[tokio::test]
async fn resuming_with_last_event_id_across_random_disconnects_loses_and_duplicates_nothing() {
    let sc = Sidecar::start(
        &fake_claude(),
        &[
            ("CLAUDE_CODE_FAKE_MODE", "chatty"),
            ("CLAUDE_CODE_FAKE_MESSAGES", "150"),
            ("CLAUDE_CODE_FAKE_INTERVAL_MS", "4"),
        ],
        &[],
    )
    .await;
    for seed in [1u64, 7, 42] {
        let id = create(&sc).await;
        assert_eq!(prompt(&sc, &id, "go").await, 202);
        let mut rng = XorShift(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let mut seen: Vec<SseEvent> = Vec::new();
        let mut reconnects = 0;
        'outer: loop {
            let cursor = seen.last().and_then(|e| e.id);
            let mut reader = attach(&sc, &id, cursor).await;
            reconnects += 1;
            let budget = 1 + rng.below(25);
            for _ in 0..budget {
                let event = tokio::time::timeout(Duration::from_secs(20), reader.next())
                    .await
                    .unwrap()
                    .unwrap();
                match event.event.as_str() {
                    "caught-up" => continue,
                    "resync" => panic!("no resync expected with a big log"),
                    _ => {}
                }
                let end = event.event == "turn_end";
                seen.push(event);
                if end {
                    break 'outer;
                }
            }
            // Drop the connection mid-stream, sometimes after a pause.
            drop(reader);
            if rng.below(3) == 0 {
                tokio::time::sleep(Duration::from_millis(rng.below(30))).await;
            }
        }
        let ids: Vec<u64> = seen.iter().map(|e| e.id.unwrap()).collect();
        let expected: Vec<u64> = (1..=ids.len() as u64).collect();
        assert_eq!(
            ids, expected,
            "seed {seed}: contiguous ids, no gaps, no duplicates"
        );
        let texts: Vec<String> = seen
            .iter()
            .filter(|e| e.event == "text")
            .map(|e| e.data["text"].as_str().unwrap().to_string())
            .collect();
        let want: Vec<String> = (0..150).map(|n| format!("msg {n}")).collect();
        assert_eq!(texts, want, "seed {seed}");
        assert!(reconnects > 5, "seed {seed}: only {reconnects} connections");
    }
}

#[tokio::test]
async fn a_cursor_older_than_the_log_gets_resync_and_a_fresh_replay() {
    let sc = Sidecar::start(
        &fake_claude(),
        &[
            ("CLAUDE_CODE_FAKE_MODE", "chatty"),
            ("CLAUDE_CODE_FAKE_MESSAGES", "40"),
        ],
        &["--breakglass-log-events", "16"],
    )
    .await;
    let id = create(&sc).await;
    assert_eq!(prompt(&sc, &id, "go").await, 202);
    wait_turn_end(&sc, &id).await;
    let mut reader = attach(&sc, &id, Some(2)).await;
    let first = reader.next().await.unwrap();
    assert_eq!(first.event, "resync");
    let mut replay = Vec::new();
    loop {
        let e = reader.next().await.unwrap();
        if e.event == "caught-up" {
            break;
        }
        replay.push(e);
    }
    assert_eq!(replay.len(), 16, "the whole kept log");
    assert_eq!(replay.last().unwrap().event, "turn_end");
    let ids: Vec<u64> = replay.iter().map(|e| e.id.unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[1] == w[0] + 1));
    // A cursor from the future (another life of the server) also resyncs.
    let mut reader = attach(&sc, &id, Some(10_000)).await;
    assert_eq!(reader.next().await.unwrap().event, "resync");
}

#[tokio::test]
async fn turns_run_detached_and_conflicts_and_unknown_sessions_are_refused() {
    let sc = Sidecar::start(
        &fake_claude(),
        &[
            ("CLAUDE_CODE_FAKE_MODE", "chatty"),
            ("CLAUDE_CODE_FAKE_MESSAGES", "30"),
            ("CLAUDE_CODE_FAKE_INTERVAL_MS", "20"),
        ],
        &[],
    )
    .await;
    let id = create(&sc).await;
    assert_eq!(prompt(&sc, &id, "first").await, 202);
    assert_eq!(prompt(&sc, &id, "second").await, 409, "a turn is running");
    // Nobody is attached; the turn still finishes.
    wait_turn_end(&sc, &id).await;
    let mut reader = attach(&sc, &id, None).await;
    let events = read_turn(&mut reader).await;
    assert_eq!(events.iter().filter(|e| e.event == "text").count(), 30);
    assert_eq!(prompt(&sc, &id, "again").await, 202, "free once the turn ended");

    let unknown = "00000000-0000-4000-8000-000000000000";
    assert_eq!(prompt(&sc, unknown, "x").await, 404);
    assert_eq!(
        sc.get(&format!("/api/breakglass/sessions/{unknown}/stream"))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    assert_eq!(
        sc.get("/api/breakglass/sessions/not-a-uuid/stream")
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    assert_eq!(
        sc.post(&format!("/api/breakglass/sessions/{unknown}/cancel"), json!({}))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    let bad = sc
        .get(&format!("/api/breakglass/sessions/{id}/stream"))
        .header("Last-Event-ID", "abc")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    for body in [
        json!({"prompt": ""}),
        json!({"nope": 1}),
        json!({"prompt": "x", "model": "a b"}),
        json!({"prompt": "x", "model": "--dangerously-skip-permissions"}),
        json!({"prompt": "x", "model": "--model=evil"}),
        json!({"prompt": "x", "model": "gpt-4o"}),
        json!({"prompt": "x", "model": ""}),
    ] {
        let resp = sc
            .post(&format!("/api/breakglass/sessions/{id}/prompt"), body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 400, "{body}");
        let error: Value = resp.json().await.unwrap();
        assert_eq!(error["error"]["type"], "invalid_request_error", "{body}");
    }
    // An oversize prompt is a 413 in the one JSON error shape, like every oversize body.
    let resp = sc
        .post(
            &format!("/api/breakglass/sessions/{id}/prompt"),
            json!({"prompt": "x".repeat(100 * 1024)}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 413);
    let error: Value = resp.json().await.unwrap();
    assert_eq!(error["error"]["code"], "payload_too_large");
    let anonymous = Sidecar::client()
        .post(format!("{}/api/breakglass/sessions", sc.base))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
}

#[tokio::test]
async fn cancel_kills_the_process_group_and_ends_the_turn() {
    let sc = Sidecar::start(
        &fake_claude(),
        &[("CLAUDE_CODE_FAKE_MODE", "grandchild-hang")],
        &[],
    )
    .await;
    let id = create(&sc).await;
    let mut reader = attach(&sc, &id, None).await;
    assert_eq!(prompt(&sc, &id, "hang").await, 202);
    let pgid = sc.wait_runs(1).await[0]["pgid"].as_i64().unwrap();
    let resp: Value = sc
        .post_json(&format!("/api/breakglass/sessions/{id}/cancel"), json!({}))
        .await;
    assert_eq!(resp["cancelled"], true);
    wait_group_gone(pgid, Duration::from_secs(2))
        .await
        .expect("CLI and grandchild gone");
    let events = read_turn(&mut reader).await;
    let kinds: Vec<&str> = events.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(kinds, ["caught-up", "user", "session", "cancelled", "turn_end"]);
    let again: Value = sc
        .post_json(&format!("/api/breakglass/sessions/{id}/cancel"), json!({}))
        .await;
    assert_eq!(again["cancelled"], false, "nothing left to cancel");
}

#[tokio::test]
async fn a_turn_past_its_deadline_is_stopped_with_an_error() {
    let sc = Sidecar::start(
        &fake_claude(),
        &[("CLAUDE_CODE_FAKE_MODE", "grandchild-hang")],
        &["--breakglass-turn-timeout-secs", "1"],
    )
    .await;
    let id = create(&sc).await;
    let mut reader = attach(&sc, &id, None).await;
    assert_eq!(prompt(&sc, &id, "hang").await, 202);
    let events = read_turn(&mut reader).await;
    let error = events.iter().find(|e| e.event == "error").unwrap();
    assert_eq!(error.data["code"], "timeout");
    assert_eq!(events.last().unwrap().event, "turn_end");
    let pgid = sc.runs()[0]["pgid"].as_i64().unwrap();
    wait_group_gone(pgid, Duration::from_secs(2)).await.unwrap();
}

#[tokio::test]
async fn a_stalled_subscriber_neither_blocks_the_turn_nor_grows_memory() {
    let sc = Sidecar::start(
        &fake_claude(),
        &[
            ("CLAUDE_CODE_FAKE_MODE", "chatty"),
            ("CLAUDE_CODE_FAKE_MESSAGES", "2000"),
            ("CLAUDE_CODE_FAKE_SIZE", "64"),
        ],
        &["--breakglass-log-events", "64"],
    )
    .await;
    let bg = sc.state.breakglass.clone().unwrap();
    let id = create(&sc).await;
    let session = bg.get(&id).unwrap();
    // In process, so no socket buffer hides the backpressure: the body is never polled.
    let stalled = bg.attach(session.clone(), None);
    assert_eq!(prompt(&sc, &id, "flood").await, 202);
    wait_turn_end(&sc, &id).await;
    // Now read what the stalled subscriber was holding: a bounded queue, then a resync.
    let mut body = stalled.into_body().into_data_stream();
    let mut text = String::new();
    use futures::StreamExt;
    while let Ok(Some(Ok(chunk))) = tokio::time::timeout(Duration::from_millis(500), body.next()).await {
        text.push_str(&String::from_utf8_lossy(&chunk));
        if text.contains("event: turn_end") && text.rfind("event: caught-up") > text.rfind("event: turn_end")
        {
            break;
        }
    }
    let frames_before_resync = text
        .split("event: resync")
        .next()
        .unwrap()
        .matches("\n\n")
        .count();
    assert!(
        text.contains("event: resync"),
        "the stalled subscriber is told to resync"
    );
    // Its queue (32 frames), `caught-up`, and the one frame in hand.
    assert!(
        frames_before_resync <= 34,
        "held at most its queue: {frames_before_resync} frames"
    );
    assert!(text.contains("event: turn_end"));
}

#[tokio::test]
async fn the_session_cap_evicts_the_longest_idle_session_and_refuses_when_all_are_busy() {
    let sc = Sidecar::start(
        &fake_claude(),
        &[("CLAUDE_CODE_FAKE_MODE", "hang")],
        &["--breakglass-max-sessions", "2"],
    )
    .await;
    let a = create(&sc).await;
    let b = create(&sc).await;
    let c = create(&sc).await;
    let list: Value = sc.get_json("/api/breakglass/sessions").await;
    let ids: Vec<&str> = list["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["session_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 2);
    assert!(!ids.contains(&a.as_str()), "the oldest idle session was evicted");
    assert_eq!(prompt(&sc, &b, "x").await, 202);
    assert_eq!(prompt(&sc, &c, "x").await, 202);
    let full = sc
        .post("/api/breakglass/sessions", json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(full.status(), 429);
    assert!(sc.state.metrics.render().contains("afk_breakglass_sessions 2"));
    let deleted = Sidecar::client()
        .delete(format!("{}/api/breakglass/sessions/{b}", sc.base))
        .bearer_auth(sidecar_support::TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 204);
    create(&sc).await;
}

#[tokio::test]
async fn shutdown_ends_attached_streams() {
    let mut sc = Sidecar::start(&fake_claude(), &[("CLAUDE_CODE_FAKE_MODE", "hang")], &[]).await;
    let id = create(&sc).await;
    let mut reader = attach(&sc, &id, None).await;
    assert_eq!(prompt(&sc, &id, "x").await, 202);
    sc.wait_runs(1).await;
    let started = std::time::Instant::now();
    sc.shutdown();
    let mut rest = Vec::new();
    while let Some(event) = tokio::time::timeout(Duration::from_secs(5), reader.next())
        .await
        .unwrap()
    {
        rest.push(event.event);
    }
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    sc.server.take().unwrap().await.unwrap().unwrap();
    let pgid = sc.runs()[0]["pgid"].as_i64().unwrap();
    wait_group_gone(pgid, Duration::from_secs(2)).await.unwrap();
}

#[tokio::test]
async fn quiet_streams_get_keepalive_comments() {
    let sc = Sidecar::start(&fake_claude(), &[], &["--sse-keepalive-secs", "1"]).await;
    let id = create(&sc).await;
    let resp = sc
        .get(&format!("/api/breakglass/sessions/{id}/stream"))
        .send()
        .await
        .unwrap();
    let mut stream = resp.bytes_stream();
    let mut text = String::new();
    let started = std::time::Instant::now();
    use futures::StreamExt;
    while !text.contains(": keepalive\n\n") {
        let chunk = tokio::time::timeout(Duration::from_secs(5), stream.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(text.starts_with("id: 0\nevent: caught-up"), "{text}");
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "not before the period"
    );
}
