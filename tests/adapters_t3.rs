//! The T3 client over real HTTP against the contract fake: success paths, every error class,
//! retries that reuse ids, token rotation, unknown-field tolerance, and proof that the client
//! never sends a command the real server would reject.

use std::sync::Arc;

use afk_operator::adapters::{
    ErrorClass, FileSecret, Secret, SecretSource, StaticSecret,
    t3::{Command, Executor, ModelSelection, T3Client, TurnMessage},
};
use afk_testkit::t3::{FakeT3, Fault, TurnScript};
use serde_json::{Value, json};

const TOKEN: &str = "t3-token-abcdef";

fn client(fake: &FakeT3, token: &str) -> T3Client {
    T3Client::new(&fake.url(), Arc::new(StaticSecret(Secret::new(token))))
}

fn project_create(cmd: &str, project: &str, root: &str) -> Command {
    Command::ProjectCreate {
        command_id: cmd.into(),
        project_id: project.into(),
        title: "acme/app".into(),
        workspace_root: root.into(),
        create_workspace_root_if_missing: false,
        default_model_selection: None,
        created_at: "2026-11-21T10:00:00.000Z".into(),
    }
}

fn thread_create(cmd: &str, thread: &str, project: &str) -> Command {
    Command::ThreadCreate {
        command_id: cmd.into(),
        thread_id: thread.into(),
        project_id: project.into(),
        title: "acme/app#42".into(),
        model_selection: ModelSelection {
            instance_id: "claudeAgent".into(),
            model: "claude-sonnet-4-5".into(),
        },
        runtime_mode: "full-access".into(),
        interaction_mode: "default".into(),
        branch: None,
        worktree_path: None,
        created_at: "2026-11-21T10:00:01.000Z".into(),
    }
}

fn turn_start(cmd: &str, thread: &str, text: &str) -> Command {
    Command::ThreadTurnStart {
        command_id: cmd.into(),
        thread_id: thread.into(),
        message: TurnMessage {
            message_id: format!("m-{cmd}"),
            role: "user",
            text: text.into(),
            attachments: vec![],
        },
        runtime_mode: "full-access".into(),
        interaction_mode: "default".into(),
        created_at: "2026-11-21T10:00:02.000Z".into(),
    }
}

async fn dispatched_thread(fake: &FakeT3, c: &T3Client) {
    fake.add_dir("/data/acme__app");
    c.dispatch(&project_create("c-p", "p-1", "/data/acme__app"))
        .await
        .unwrap();
    c.dispatch(&thread_create("c-t", "t-1", "p-1")).await.unwrap();
    c.dispatch(&turn_start("c-s", "t-1", "Implement it"))
        .await
        .unwrap();
}

#[tokio::test]
async fn environment_needs_no_auth() {
    let fake = FakeT3::start(TOKEN).await;
    let env = client(&fake, "wrong").environment().await.unwrap();
    assert_eq!(env.server_version.as_deref(), Some("0.0.33"));
    let sent = fake.with(|s| s.requests[0].clone());
    assert_eq!(
        sent.header("authorization"),
        None,
        "the probe sends no credential"
    );
}

#[tokio::test]
async fn dispatch_flow_and_shell_poll() {
    let fake = FakeT3::start(TOKEN).await;
    let c = client(&fake, TOKEN);
    dispatched_thread(&fake, &c).await;
    let shell = c.shell().await.unwrap();
    assert_eq!(
        shell.project_for_root("/data/acme__app/").map(|p| p.id.as_str()),
        Some("p-1")
    );
    let t = shell.thread("t-1").unwrap();
    assert_eq!(t.latest_turn.as_ref().unwrap().state, "running");
    assert_eq!(t.session.as_ref().unwrap().status, "running");
    assert_eq!(fake.messages("t-1")[0]["text"], "Implement it");

    fake.finish_turn("t-1", "completed", "ready");
    let t = c.shell().await.unwrap().thread("t-1").cloned().unwrap();
    assert_eq!(t.latest_turn.unwrap().state, "completed");
    let detail = c.thread("t-1").await.unwrap();
    assert_eq!(detail["thread"]["id"], "t-1");
    let missing = c.thread("nope").await.unwrap_err();
    assert_eq!((missing.kind, missing.status), ("not_found", Some(404)));
}

#[tokio::test]
async fn retries_reuse_ids_and_t3_answers_from_its_receipt() {
    let fake = FakeT3::start(TOKEN).await;
    let c = client(&fake, TOKEN);
    fake.add_dir("/data/acme__app");
    let cmd = project_create("c-p", "p-1", "/data/acme__app");
    // The reply is lost after the command was applied (a 502 from a proxy).
    fake.inject(Fault {
        status: 502,
        remaining: 1,
        apply_first: true,
    });
    let err = c.dispatch(&cmd).await.unwrap_err();
    assert!(err.is_transient(), "{err}");
    // The retry re-sends the same command: same sequence, no second project.
    let first = c.dispatch(&cmd).await.unwrap();
    let again = c.dispatch(&cmd).await.unwrap();
    assert_eq!(first, again);
    assert_eq!(fake.applied_of("project.create").len(), 1);
    let sent: Vec<Value> = fake.dispatch_bodies();
    assert_eq!(sent.len(), 3);
    assert!(
        sent.iter()
            .all(|b| b["commandId"] == "c-p" && b["projectId"] == "p-1")
    );
}

#[tokio::test]
async fn transient_faults_are_transient() {
    let fake = FakeT3::start(TOKEN).await;
    let c = client(&fake, TOKEN);
    fake.add_dir("/d");
    for status in [429, 502, 503, 504] {
        fake.inject(Fault {
            status,
            remaining: 1,
            apply_first: false,
        });
        let err = c.dispatch(&project_create("c", "p", "/d")).await.unwrap_err();
        assert_eq!((err.class, err.status), (ErrorClass::Transient, Some(status)));
    }
    // Transport: nobody listens.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dead = T3Client::new(
        &format!("http://127.0.0.1:{port}"),
        Arc::new(StaticSecret(Secret::new(TOKEN))),
    );
    let err = dead.shell().await.unwrap_err();
    assert_eq!((err.kind, err.is_transient()), ("transport", true));
}

#[tokio::test]
async fn business_rejections_and_auth_are_permanent() {
    let fake = FakeT3::start(TOKEN).await;
    let c = client(&fake, TOKEN);
    fake.add_dir("/data/acme__app");
    c.dispatch(&project_create("c-1", "p-1", "/data/acme__app"))
        .await
        .unwrap();
    // A second active project on the same root.
    let err = c
        .dispatch(&project_create("c-2", "p-2", "/data/acme__app"))
        .await
        .unwrap_err();
    assert_eq!(
        (err.kind, err.class, err.status),
        ("dispatch_rejected", ErrorClass::Permanent, Some(500))
    );
    // A thread in a project that does not exist.
    let err = c
        .dispatch(&thread_create("c-3", "t-1", "p-missing"))
        .await
        .unwrap_err();
    assert_eq!(err.kind, "dispatch_rejected");
    // A commandId reused on another aggregate.
    let err = c.dispatch(&thread_create("c-1", "t-2", "p-1")).await.unwrap_err();
    assert_eq!(err.kind, "dispatch_rejected");
    // A workspace root that does not exist (normalizer 400 with a tagged body).
    let err = c
        .dispatch(&project_create("c-4", "p-4", "/nowhere"))
        .await
        .unwrap_err();
    assert_eq!((err.kind, err.status), ("invalid_request", Some(400)));
    // Auth.
    let err = client(&fake, "stale").shell().await.unwrap_err();
    assert_eq!(
        (err.kind, err.status, err.is_transient()),
        ("auth", Some(401), false)
    );
    fake.allow_token("reader", false);
    let err = client(&fake, "reader")
        .dispatch(&thread_create("c-5", "t-5", "p-1"))
        .await
        .unwrap_err();
    assert_eq!((err.kind, err.status), ("auth", Some(403)));
    assert!(!err.to_string().contains("reader"), "no token in messages: {err}");
}

#[tokio::test]
async fn the_token_file_is_read_on_every_request() {
    let fake = FakeT3::start("first").await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("token");
    std::fs::write(&path, "first\n").unwrap();
    let source: Arc<dyn SecretSource> = Arc::new(FileSecret::new(&path));
    let c = T3Client::new(&fake.url(), source);
    c.shell().await.unwrap();
    fake.allow_token("second", true);
    fake.revoke_token("first");
    std::fs::write(&path, "second").unwrap();
    c.shell().await.unwrap();
    let auth: Vec<String> = fake.with(|s| {
        s.requests
            .iter()
            .filter_map(|r| r.header("authorization").map(str::to_string))
            .collect()
    });
    assert_eq!(auth, vec!["Bearer first", "Bearer second"]);
}

#[tokio::test]
async fn a_turn_that_never_starts_and_unknown_states_are_readable() {
    let fake = FakeT3::start(TOKEN).await;
    let c = client(&fake, TOKEN);
    fake.set_script(TurnScript::NeverStart);
    dispatched_thread(&fake, &c).await;
    let t = c.shell().await.unwrap().thread("t-1").cloned().unwrap();
    assert!(t.latest_turn.is_none());
    let session = t.session.unwrap();
    assert_eq!(session.status, "error");
    assert!(session.last_error.unwrap().contains("not configured"));
    fake.set_raw_status("t-1", None, Some("recovering"));
    let t = c.shell().await.unwrap().thread("t-1").cloned().unwrap();
    assert_eq!(
        t.session.unwrap().status,
        "recovering",
        "unknown enum values survive decoding"
    );
}

#[tokio::test]
async fn a_thread_moves_starting_running_error() {
    let fake = FakeT3::start(TOKEN).await;
    let c = client(&fake, TOKEN);
    fake.set_script(TurnScript::Hold);
    dispatched_thread(&fake, &c).await;
    let t = c.shell().await.unwrap().thread("t-1").cloned().unwrap();
    assert_eq!(
        (t.latest_turn.is_none(), t.session.unwrap().status.as_str()),
        (true, "starting")
    );
    fake.start_turn("t-1");
    let t = c.shell().await.unwrap().thread("t-1").cloned().unwrap();
    assert_eq!(t.latest_turn.unwrap().state, "running");
    fake.finish_turn("t-1", "error", "error");
    let t = c.shell().await.unwrap().thread("t-1").cloned().unwrap();
    assert_eq!(
        (
            t.latest_turn.unwrap().state.as_str(),
            t.session.unwrap().status.as_str()
        ),
        ("error", "error")
    );
}

#[tokio::test]
async fn pending_requests_show_in_the_shell() {
    let fake = FakeT3::start(TOKEN).await;
    let c = client(&fake, TOKEN);
    dispatched_thread(&fake, &c).await;
    fake.raise_request("t-1", true);
    let t = c.shell().await.unwrap().thread("t-1").cloned().unwrap();
    assert!(t.has_pending_approvals && !t.has_pending_user_input);
    c.dispatch(&Command::ThreadTurnInterrupt {
        command_id: "c-i".into(),
        thread_id: "t-1".into(),
        turn_id: None,
        created_at: "x".into(),
    })
    .await
    .unwrap();
    let t = c.shell().await.unwrap().thread("t-1").cloned().unwrap();
    assert_eq!(t.latest_turn.unwrap().state, "interrupted");
    assert!(!t.has_pending_approvals);
    c.dispatch(&Command::ThreadSessionStop {
        command_id: "c-x".into(),
        thread_id: "t-1".into(),
        created_at: "x".into(),
    })
    .await
    .unwrap();
    assert_eq!(
        c.shell()
            .await
            .unwrap()
            .thread("t-1")
            .unwrap()
            .session
            .as_ref()
            .unwrap()
            .status,
        "stopped"
    );
}

/// Raw posts of every malformed variant the contract lists: the fake must answer each with the
/// empty 400 T3 gives for a schema failure (a fake that accepts these would hide client bugs).
#[tokio::test]
async fn the_fake_rejects_every_malformed_command() {
    let fake = FakeT3::start(TOKEN).await;
    fake.add_dir("/d");
    let http = reqwest::Client::new();
    let good_thread = serde_json::to_value(thread_create("c", "t", "p")).unwrap();
    let good_turn = serde_json::to_value(turn_start("c", "t", "x")).unwrap();
    let good_project = serde_json::to_value(project_create("c", "p", "/d")).unwrap();
    let without = |v: &Value, ptr: &str| {
        let mut v = v.clone();
        let (parent, key) = ptr.rsplit_once('/').unwrap();
        v.pointer_mut(if parent.is_empty() { "" } else { parent })
            .unwrap()
            .as_object_mut()
            .unwrap()
            .remove(key);
        v
    };
    let with = |v: &Value, ptr: &str, value: Value| {
        let mut v = v.clone();
        *v.pointer_mut(ptr).unwrap() = value;
        v
    };
    let malformed = vec![
        without(&good_thread, "/branch"),
        without(&good_thread, "/worktreePath"),
        without(&good_thread, "/runtimeMode"),
        without(&good_thread, "/modelSelection"),
        with(&good_thread, "/runtimeMode", json!("yolo")),
        with(&good_thread, "/modelSelection/instanceId", json!("9bad slug")),
        without(&good_turn, "/message/attachments"),
        without(&good_turn, "/runtimeMode"),
        without(&good_turn, "/interactionMode"),
        with(&good_turn, "/message/role", json!("assistant")),
        without(&good_turn, "/message/messageId"),
        with(&good_turn, "/commandId", json!("   ")),
        without(&good_project, "/workspaceRoot"),
        without(&good_project, "/createdAt"),
        json!({"command": "thread.create", "commandId": "c"}),
        json!({"type": "thread.unknown", "commandId": "c"}),
    ];
    for body in malformed {
        let resp = http
            .post(format!("{}/api/orchestration/dispatch", fake.url()))
            .bearer_auth(TOKEN)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 400, "{body}");
        assert_eq!(
            resp.text().await.unwrap(),
            "",
            "schema failures have an empty body: {body}"
        );
    }
    // Not JSON at all, and a foreign content type.
    let resp = http
        .post(format!("{}/api/orchestration/dispatch", fake.url()))
        .bearer_auth(TOKEN)
        .body("{")
        .header("content-type", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 400);
    let resp = http
        .post(format!("{}/api/orchestration/dispatch", fake.url()))
        .bearer_auth(TOKEN)
        .body("x")
        .header("content-type", "text/plain")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 415);
    // Auth runs before decoding: an unauthenticated malformed request is a 401.
    let resp = http
        .post(format!("{}/api/orchestration/dispatch", fake.url()))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    assert_eq!(
        resp.json::<Value>().await.unwrap()["reason"],
        "missing_credential"
    );
    assert!(fake.with(|s| s.applied.is_empty()));
}

/// Every command shape the client can build is accepted by the strict fake, and the ones it
/// refuses never reach the wire.
#[tokio::test]
async fn the_client_never_sends_a_malformed_command() {
    let fake = FakeT3::start(TOKEN).await;
    let c = client(&fake, TOKEN);
    fake.add_dir("/d");
    let table = vec![
        project_create("k1", "p", "/d"),
        thread_create("k2", "t", "p"),
        turn_start("k3", "t", "go"),
        Command::ThreadTurnInterrupt {
            command_id: "k4".into(),
            thread_id: "t".into(),
            turn_id: Some("turn-1".into()),
            created_at: "x".into(),
        },
        Command::ThreadSessionStop {
            command_id: "k5".into(),
            thread_id: "t".into(),
            created_at: "x".into(),
        },
    ];
    for cmd in &table {
        c.dispatch(cmd)
            .await
            .unwrap_or_else(|e| panic!("{} rejected: {e}", cmd.type_name()));
    }
    let invalid = vec![
        turn_start("k6", "t", ""),
        turn_start("", "t", "x"),
        thread_create("k7", "", "p"),
    ];
    let before = fake.dispatch_bodies().len();
    for cmd in &invalid {
        let err = c.dispatch(cmd).await.unwrap_err();
        assert_eq!((err.kind, err.status), ("invalid_command", None));
    }
    assert_eq!(fake.dispatch_bodies().len(), before, "nothing invalid was sent");
}

/// `/api/auth/session` validates the token: always 200, `authenticated: false` for a revoked or
/// expired token (contract §2/§3), `expiresAt` for a good one.
#[tokio::test]
async fn the_token_is_validated_with_the_auth_session() {
    let fake = FakeT3::start(TOKEN).await;
    fake.set_token_expiry(TOKEN, "2030-01-02T03:04:05Z");
    let c = client(&fake, TOKEN);
    let s = c.auth_session().await.unwrap();
    assert!(s.authenticated);
    assert_eq!(
        s.expires_at().map(|t| t.to_string()),
        Some("2030-01-02T03:04:05Z".to_string())
    );
    assert!(s.scopes.iter().any(|x| x == "orchestration:operate"));
    let bad = client(&fake, "not-a-token").auth_session().await.unwrap();
    assert!(!bad.authenticated && bad.expires_at().is_none());
    fake.set_token_expiry(TOKEN, "2001-01-01T00:00:00Z");
    assert!(!c.auth_session().await.unwrap().authenticated, "expired");
    let sent: Vec<_> = fake.with(|s| {
        s.requests
            .iter()
            .filter(|r| r.path == "/api/auth/session")
            .map(|r| r.header("authorization").map(str::to_string))
            .collect()
    });
    assert_eq!(sent[0].as_deref(), Some(format!("Bearer {TOKEN}").as_str()));
}
