//! Warm `claude` processes behind the voice gateway (issue: voice latency below a cold CLI's
//! floor), with the stream-json fake CLI (`tests/fixtures/fake-claude`, which reads one message
//! per stdin line like claude 2.1.330 does). What a client must never notice: a pooled process is
//! used for exactly one chat request, concurrent requests never share one, a conversation's
//! second turn runs in the same live process and sees the first, a process that died while
//! waiting or was started under an old API key never serves anyone, and warm processes give
//! their slots up to requests. The real CLI's side of the same contract is in
//! `tests/voice_real_cli.rs`.

mod sidecar_support;

use std::{collections::HashSet, time::Duration};

use serde_json::{Value, json};
use sidecar_support::{Sidecar, fake_claude};

/// Wait (bounded) for `condition`, polling.
async fn wait_for(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !condition() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn alive(pid: i32) -> bool {
    // A zombie is not alive: it is only waiting to be reaped.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| stat.rsplit_once(')').map(|(_, rest)| rest.trim().to_string()))
        .is_some_and(|rest| !rest.starts_with('Z'))
}

fn chat(text: &str) -> Value {
    json!({"model": "sonnet", "messages": [{"role": "user", "content": text}]})
}

fn reply(completion: &Value) -> &str {
    completion["choices"][0]["message"]["content"]
        .as_str()
        .unwrap_or_default()
}

#[tokio::test]
async fn a_pooled_process_serves_exactly_one_chat_request_and_concurrent_ones_never_share() {
    let sc = Sidecar::start(
        &fake_claude(),
        &[],
        &["--max-concurrent-turns", "8", "--chat-pool-size", "2"],
    )
    .await;
    let voice = sc.state.voice.clone().unwrap();
    wait_for("two warm processes", || {
        voice.warm_processes() == 2 && sc.started_pids().len() == 2
    })
    .await;
    let warm_before: HashSet<i32> = sc.started_pids().into_iter().collect();

    let first: Value = sc.post_json("/v1/chat/completions", chat("one")).await;
    assert_eq!(reply(&first), "You said: one");
    let second: Value = sc.post_json("/v1/chat/completions", chat("two")).await;
    assert_eq!(reply(&second), "You said: two", "no state from the first request");
    let concurrent: Vec<Value> = futures::future::join_all(
        (0..6).map(|i| sc.post_json("/v1/chat/completions", chat(&format!("burst {i}")))),
    )
    .await;
    for (i, completion) in concurrent.iter().enumerate() {
        assert_eq!(reply(completion), format!("You said: burst {i}"));
    }

    let runs = sc.wait_runs(8).await;
    let pids: Vec<i64> = runs.iter().map(|r| r["pid"].as_i64().unwrap()).collect();
    let distinct: HashSet<i64> = pids.iter().copied().collect();
    assert_eq!(
        distinct.len(),
        pids.len(),
        "a process served two requests: {runs:?}"
    );
    assert!(
        runs.iter().all(|r| r["turn"] == 0),
        "every process saw one message only"
    );
    assert!(
        runs.iter().all(|r| r["argv"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a == "--no-session-persistence")),
        "chat processes keep no session"
    );
    let served_warm = pids
        .iter()
        .filter(|pid| warm_before.contains(&(**pid as i32)))
        .count();
    assert!(
        served_warm >= 1,
        "the first request was served by a process started before it"
    );
    assert!(sc.turn_starts("warm").await >= 1);
    // Used processes exit after their one answer; the pool is refilled.
    for pid in &pids {
        let pid = *pid as i32;
        wait_for("a used process to exit", || !alive(pid)).await;
    }
    wait_for("the pool refilled", || voice.warm_processes() == 2).await;
}

#[tokio::test]
async fn a_warm_process_killed_while_waiting_is_replaced_and_never_noticed() {
    let sc = Sidecar::start(&fake_claude(), &[], &[]).await;
    let voice = sc.state.voice.clone().unwrap();
    wait_for("a warm process", || {
        voice.warm_processes() == 1 && sc.started_pids().len() == 1
    })
    .await;
    let victim = voice.warm_pids()[0];
    kill(victim);
    // At once, before the pool can have noticed: the request is still answered.
    let completion: Value = sc.post_json("/v1/chat/completions", chat("still there?")).await;
    assert_eq!(reply(&completion), "You said: still there?");
    let runs = sc.wait_runs(1).await;
    assert_ne!(runs[0]["pid"].as_i64().unwrap(), i64::from(victim));

    // Killed while nobody asks: a replacement is started without a request.
    wait_for("a fresh warm process", || {
        voice
            .warm_pids()
            .first()
            .is_some_and(|pid| *pid != victim && alive(*pid))
    })
    .await;
    let spare = voice.warm_pids()[0];
    kill(spare);
    wait_for("the dead process replaced", || {
        voice
            .warm_pids()
            .first()
            .is_some_and(|pid| *pid != spare && alive(*pid))
    })
    .await;
    let completion: Value = sc.post_json("/v1/chat/completions", chat("again")).await;
    assert_eq!(reply(&completion), "You said: again");
    let runs = sc.wait_runs(2).await;
    let served = runs[1]["pid"].as_i64().unwrap() as i32;
    assert!(served != spare && served != victim);
}

fn kill(pid: i32) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL).unwrap();
}

#[tokio::test]
async fn a_rotated_api_key_replaces_the_pool_before_anyone_is_served_with_the_old_one() {
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("api-key");
    std::fs::write(&key_file, "sk-ant-old\n").unwrap();
    let sc = Sidecar::start_with_key(&fake_claude(), Some(&key_file), &[], &[]).await;
    let voice = sc.state.voice.clone().unwrap();
    wait_for("a warm process", || {
        voice.warm_processes() == 1 && sc.started_pids().len() == 1
    })
    .await;
    let old = sc.started_pids()[0];

    std::fs::write(&key_file, "sk-ant-new\n").unwrap();
    // Even a request that comes before the pool noticed gets a process with the new key.
    let completion: Value = sc.post_json("/v1/chat/completions", chat("which key?")).await;
    assert_eq!(reply(&completion), "You said: which key?");
    let runs = sc.wait_runs(1).await;
    let sha = |key: &str| {
        use sha2::Digest;
        let digest = sha2::Sha256::digest(key.as_bytes());
        digest.iter().map(|b| format!("{b:02x}")).collect::<String>()[..12].to_string()
    };
    assert_eq!(runs[0]["api_key_sha"], json!(sha("sk-ant-new")));
    assert_ne!(runs[0]["pid"].as_i64().unwrap(), i64::from(old));
    wait_for("the old-key process killed", || !alive(old)).await;
    wait_for("a new-key warm process", || voice.warm_processes() == 1).await;
}

#[tokio::test]
async fn a_conversation_keeps_its_process_between_turns_and_resumes_after_the_idle_timeout() {
    let sc = Sidecar::start(&fake_claude(), &[], &["--live-session-idle-secs", "1"]).await;
    let voice = sc.state.voice.clone().unwrap();
    let id = "0d9a1f4e-7c1b-4f5e-9a51-5f0c2d7e8b11";
    let one: Value = sc
        .post_json(
            "/v1/conversational",
            json!({"session_id": id, "message": "remember kiwi"}),
        )
        .await;
    assert_eq!(one["reply"], "You said: remember kiwi");
    assert_eq!(voice.live_sessions(), 1, "the process is kept after the turn");
    let two: Value = sc
        .post_json(
            "/v1/conversational",
            json!({"session_id": id, "message": "and now?"}),
        )
        .await;
    assert_eq!(
        two["reply"], "You said: and now? (turn 2)",
        "turn 1 is in its context"
    );
    let runs = sc.wait_runs(2).await;
    assert_eq!(
        runs[0]["pid"], runs[1]["pid"],
        "the same live process served both turns"
    );
    assert_eq!(runs[1]["turn"], 1);
    assert_eq!(sc.turn_starts("live").await, 1);

    // Idle past the timeout: let go (it saved the session), so turn 3 resumes it cold.
    let pid = runs[0]["pid"].as_i64().unwrap() as i32;
    wait_for("the idle process let go", || {
        voice.live_sessions() == 0 && !alive(pid)
    })
    .await;
    let three: Value = sc
        .post_json(
            "/v1/conversational",
            json!({"session_id": id, "message": "still?"}),
        )
        .await;
    assert_eq!(three["reply"], "You said: still? (turn 3)");
    let runs = sc.wait_runs(3).await;
    assert_ne!(runs[2]["pid"], runs[0]["pid"]);
    let argv = runs[2]["argv"].as_array().unwrap();
    assert!(argv.windows(2).any(|w| w[0] == "--resume" && w[1] == id));
}

#[tokio::test]
async fn kept_processes_are_bounded_and_give_their_slots_to_requests() {
    // One slot in all: the warm chat process and a kept conversation must both give it up.
    let sc = Sidecar::start(
        &fake_claude(),
        &[],
        &["--max-concurrent-turns", "1", "--live-sessions", "1"],
    )
    .await;
    let voice = sc.state.voice.clone().unwrap();
    wait_for("a warm process", || voice.warm_processes() == 1).await;
    let a = "11111111-1111-4111-8111-111111111111";
    let b = "22222222-2222-4222-8222-222222222222";
    let one: Value = sc
        .post_json("/v1/conversational", json!({"session_id": a, "message": "hi a"}))
        .await;
    assert_eq!(
        one["reply"], "You said: hi a",
        "the warm process gave its slot up"
    );
    assert_eq!(voice.live_sessions(), 1);
    let two: Value = sc
        .post_json("/v1/conversational", json!({"session_id": b, "message": "hi b"}))
        .await;
    assert_eq!(
        two["reply"], "You said: hi b",
        "session a's idle process gave its slot up"
    );
    assert_eq!(voice.live_sessions(), 1, "at most --live-sessions kept");
    let chat_reply: Value = sc.post_json("/v1/chat/completions", chat("and chat")).await;
    assert_eq!(reply(&chat_reply), "You said: and chat");
    let again: Value = sc
        .post_json(
            "/v1/conversational",
            json!({"session_id": a, "message": "back to a"}),
        )
        .await;
    assert_eq!(
        again["reply"], "You said: back to a (turn 2)",
        "resumed from its saved session"
    );
}

#[tokio::test]
async fn shutdown_kills_warm_and_kept_processes() {
    let mut sc = Sidecar::start(&fake_claude(), &[], &["--max-concurrent-turns", "4"]).await;
    let voice = sc.state.voice.clone().unwrap();
    wait_for("a warm process", || voice.warm_processes() == 1).await;
    let id = "33333333-3333-4333-8333-333333333333";
    let one: Value = sc
        .post_json("/v1/conversational", json!({"session_id": id, "message": "hi"}))
        .await;
    assert_eq!(one["reply"], "You said: hi");
    assert_eq!(voice.live_sessions(), 1);
    // The warm process and the kept one, each written its pid as it started.
    wait_for("two processes started", || sc.started_pids().len() == 2).await;
    let pids = sc.started_pids();
    assert!(pids.iter().all(|pid| alive(*pid)), "both still waiting");
    sc.shutdown();
    for pid in pids {
        wait_for("every CLI process gone after shutdown", || !alive(pid)).await;
    }
}

#[tokio::test]
async fn with_the_pool_and_live_sessions_off_every_turn_is_a_fresh_process() {
    let sc = Sidecar::start(
        &fake_claude(),
        &[],
        &["--chat-pool-size", "0", "--live-sessions", "0"],
    )
    .await;
    let voice = sc.state.voice.clone().unwrap();
    let completion: Value = sc.post_json("/v1/chat/completions", chat("cold")).await;
    assert_eq!(reply(&completion), "You said: cold");
    let id = "44444444-4444-4444-8444-444444444444";
    for message in ["one", "two"] {
        let answer: Value = sc
            .post_json(
                "/v1/conversational",
                json!({"session_id": id, "message": message}),
            )
            .await;
        assert!(answer["reply"].as_str().unwrap().starts_with("You said: "));
    }
    assert_eq!(voice.warm_processes(), 0);
    assert_eq!(voice.live_sessions(), 0);
    assert_eq!(
        sc.started_pids().len(),
        3,
        "one process per turn, none ahead of time"
    );
    assert_eq!(sc.turn_starts("cold").await, 3);
}
