//! The sidecar's authenticated AFK operations and the GitHub webhook, driven in process through
//! the axum router against the fake API server: bearer auth edge cases and token rotation, the
//! grouped runs view (no command ids), the emergency-stop round trip, and webhook signatures
//! (good, bad, missing, body changed) with the official example payloads.

use std::sync::{Arc, atomic::AtomicBool};

use afk_operator::controller::Trigger;
use afk_operator::{
    config::SidecarArgs,
    crd,
    metrics::Metrics,
    sidecar::{Cluster, SidecarState, router},
};
use afk_testkit::apiserver::FakeApiServer;
use axum::{
    body::Body,
    http::{Request, StatusCode},
};
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;
use tower::ServiceExt;

const TOKEN: &str = "sidecar-token-0123456789";
const HOOK_SECRET: &str = "hook-secret";

struct Setup {
    api: FakeApiServer,
    state: SidecarState,
    trigger_rx: tokio::sync::broadcast::Receiver<Trigger>,
    _dir: tempfile::TempDir,
    token_file: std::path::PathBuf,
}

fn b64(v: &str) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in v.as_bytes().chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (i, shift) in [18, 12, 6, 0].into_iter().enumerate() {
            out.push(if i <= chunk.len() {
                T[(n >> shift) as usize & 63] as char
            } else {
                '='
            });
        }
    }
    out
}

fn setup(trust_proxy_header: bool, with_token: bool) -> Setup {
    let mut api = FakeApiServer::new();
    for c in crd::all() {
        api = api.with_crd(&serde_json::to_value(c).unwrap());
    }
    api.with_store(|s| {
        s.seed(json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "gh", "namespace": "afk"}, "data": {"webhook": b64(HOOK_SECRET)}}));
        s.seed(json!({"apiVersion": "afk.dev/v1alpha1", "kind": "AfkConfig", "metadata": {"name": "team", "namespace": "afk"},
            "spec": {"suspend": false, "allowlist": [{"repo": "Codertocat/Hello-World"}],
                     "tracker": {"github": {"tokenSecretRef": {"name": "gh", "key": "token"}, "webhookSecretRef": {"name": "gh", "key": "webhook"}}},
                     "executor": {"t3": {"url": "http://t3", "tokenSecretRef": {"name": "t3", "key": "token"}, "model": "m"}}},
            "status": {"queue": [{"repo": "Codertocat/Hello-World", "issue": 7, "title": "Waits", "reason": "Blocked by #3 (open)"}]}}));
        s.seed(json!({"apiVersion": "afk.dev/v1alpha1", "kind": "AfkRun", "metadata": {"name": "r1", "namespace": "afk",
                "labels": {"afk.dev/config": "team", "afk.dev/repo": "Codertocat.Hello-World"}},
            "spec": {"configRef": "team", "repo": "Codertocat/Hello-World", "issue": 1, "attempt": 1, "title": "t",
                     "taskSnapshot": {"title": "t", "body": "", "sha256": "a".repeat(64)}},
            "status": {"phase": "Working", "threadUrl": "https://t3/?thread=x",
                       "dispatch": {"threadCommandId": "SECRET-CMD-1", "turnCommandId": "SECRET-CMD-2", "messageId": "m", "mintedAt": "2026-11-21T10:00:00Z"}}}));
        s.seed(json!({"apiVersion": "afk.dev/v1alpha1", "kind": "AfkRun", "metadata": {"name": "r2", "namespace": "afk",
                "labels": {"afk.dev/config": "team", "afk.dev/repo": "Codertocat.Hello-World"}},
            "spec": {"configRef": "team", "repo": "Codertocat/Hello-World", "issue": 2, "attempt": 1, "title": "t",
                     "taskSnapshot": {"title": "t", "body": "", "sha256": "a".repeat(64)}},
            "status": {"phase": "Frozen", "reason": "FixForwardBudgetExhausted", "finishedAt": "2026-11-21T11:00:00Z"}}));
    });
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    if with_token {
        std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    }
    let mut argv = vec![
        "--listen".to_string(),
        "127.0.0.1:0".into(),
        "--api-token-file".into(),
        token_file.display().to_string(),
    ];
    if trust_proxy_header {
        argv.push("--trust-proxy-header".into());
    }
    let args = SidecarArgs::from_argv(argv).unwrap();
    let (trigger, trigger_rx) = tokio::sync::broadcast::channel(8);
    let cluster = Cluster {
        client: api.client(),
        namespace: Some("afk".into()),
        trigger,
    };
    let state = SidecarState::new(
        &args,
        &afk_operator::agents::Agents::default(),
        Arc::new(AtomicBool::new(true)),
        Metrics::new(),
        Some(cluster),
    );
    Setup {
        api,
        state,
        trigger_rx,
        _dir: dir,
        token_file,
    }
}

async fn call(state: &SidecarState, req: Request<Body>) -> (StatusCode, Value) {
    let resp = router(state.clone()).oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20).await.unwrap();
    (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

fn get(path: &str, auth: Option<&str>) -> Request<Body> {
    let mut b = Request::get(path);
    if let Some(a) = auth {
        b = b.header("authorization", a);
    }
    b.body(Body::empty()).unwrap()
}

#[tokio::test]
async fn bearer_auth_edge_cases() {
    let s = setup(false, true);
    let bearer = format!("Bearer {TOKEN}");
    assert_eq!(
        call(&s.state, get("/api/afk/runs", Some(&bearer))).await.0,
        StatusCode::OK
    );
    for bad in [
        None,
        Some(String::new()),
        Some("Bearer ".to_string()),
        Some(format!("bearer {TOKEN}")),
        Some(TOKEN.to_string()),
        Some(format!("Bearer {}", &TOKEN[..TOKEN.len() - 1])),
        Some(format!("Bearer {TOKEN}x")),
        Some(format!("Basic {TOKEN}")),
    ] {
        let (status, body) = call(&s.state, get("/api/afk/runs", bad.as_deref())).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{bad:?}");
        assert_eq!(body["error"]["type"], "authentication_error");
    }
    // Probes need no token.
    assert_eq!(
        router(s.state.clone())
            .oneshot(get("/healthz", None))
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    // Rotation: the file is re-read when it changes.
    std::thread::sleep(std::time::Duration::from_millis(20));
    std::fs::write(&s.token_file, "rotated-token").unwrap();
    assert_eq!(
        call(&s.state, get("/api/afk/runs", Some(&bearer))).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        call(&s.state, get("/api/afk/runs", Some("Bearer rotated-token")))
            .await
            .0,
        StatusCode::OK
    );
}

#[tokio::test]
async fn no_configured_token_rejects_everything() {
    let s = setup(false, false);
    let (status, body) = call(&s.state, get("/api/afk/runs", Some(&format!("Bearer {TOKEN}")))).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("no API token")
    );
}

#[tokio::test]
async fn the_runs_view_is_grouped_and_leaks_no_command_ids() {
    let s = setup(false, true);
    let (status, body) = call(&s.state, get("/api/afk/runs", Some(&format!("Bearer {TOKEN}")))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["inProgress"][0]["name"], "r1");
    assert_eq!(body["inProgress"][0]["threadUrl"], "https://t3/?thread=x");
    assert_eq!(body["failedOrBlocked"][0]["reason"], "FixForwardBudgetExhausted");
    assert_eq!(body["queued"][0]["reason"], "Blocked by #3 (open)");
    assert_eq!(body["recentlyResolved"], json!([]));
    assert!(
        !body.to_string().contains("SECRET-CMD"),
        "command ids stay out of the view"
    );
}

#[tokio::test]
async fn emergency_stop_round_trip() {
    let s = setup(true, true);
    let bearer = format!("Bearer {TOKEN}");
    let post = Request::post("/api/afk/emergency-stop")
        .header("authorization", &bearer)
        .header("x-authentik-username", "alice")
        .header("content-type", "application/json")
        .body(Body::from(json!({"reason": "prod is on fire"}).to_string()))
        .unwrap();
    let (status, body) = call(&s.state, post).await;
    assert_eq!((status, body["config"].as_str()), (StatusCode::OK, Some("team")));
    let config = s
        .api
        .with_store(|st| st.get("afk.dev/v1alpha1", "AfkConfig", "afk", "team"))
        .unwrap();
    assert_eq!(
        config["metadata"]["annotations"]["afk.dev/emergency-stop"],
        "prod is on fire (by alice)"
    );
    let (_, body) = call(&s.state, get("/api/afk/emergency-stop", Some(&bearer))).await;
    assert_eq!(body["configs"][0]["stopped"], true);
    let del = Request::delete("/api/afk/emergency-stop?config=team")
        .header("authorization", &bearer)
        .body(Body::empty())
        .unwrap();
    assert_eq!(call(&s.state, del).await.0, StatusCode::OK);
    let config = s
        .api
        .with_store(|st| st.get("afk.dev/v1alpha1", "AfkConfig", "afk", "team"))
        .unwrap();
    assert!(
        config["metadata"]["annotations"]
            .get("afk.dev/emergency-stop")
            .is_none()
    );
    let empty = Request::post("/api/afk/emergency-stop")
        .header("authorization", &bearer)
        .header("content-type", "application/json")
        .body(Body::from(json!({"reason": "  "}).to_string()))
        .unwrap();
    assert_eq!(call(&s.state, empty).await.0, StatusCode::BAD_REQUEST);
    let missing = Request::post("/api/afk/emergency-stop")
        .header("authorization", &bearer)
        .header("content-type", "application/json")
        .body(Body::from(json!({"config": "nope", "reason": "x"}).to_string()))
        .unwrap();
    assert_eq!(call(&s.state, missing).await.0, StatusCode::NOT_FOUND);
}

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/github-webhooks")
            .join(format!("{name}.json")),
    )
    .unwrap()
}

fn sign(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

fn hook(event: &str, body: Vec<u8>, signature: Option<String>) -> Request<Body> {
    let mut b = Request::post("/webhooks/github")
        .header("x-github-event", event)
        .header("content-type", "application/json");
    if let Some(s) = signature {
        b = b.header("x-hub-signature-256", s);
    }
    b.body(Body::from(body)).unwrap()
}

#[tokio::test]
async fn webhook_signatures_and_triggers() {
    let mut s = setup(false, true);
    let body = fixture("issues.labeled");
    let (status, resp) = call(
        &s.state,
        hook("issues", body.clone(), Some(sign(HOOK_SECRET, &body))),
    )
    .await;
    assert_eq!(
        (status, resp["triggered"].clone()),
        (StatusCode::ACCEPTED, json!(["team"]))
    );
    let Trigger::Config(triggered) = s.trigger_rx.try_recv().unwrap() else {
        panic!("an issue event polls the config")
    };
    assert_eq!(
        (triggered.name.as_str(), triggered.namespace.as_deref()),
        ("team", Some("afk"))
    );

    assert_eq!(
        call(&s.state, hook("issues", body.clone(), None)).await.0,
        StatusCode::UNAUTHORIZED,
        "unsigned"
    );
    assert_eq!(
        call(&s.state, hook("issues", body.clone(), Some(sign("wrong", &body))))
            .await
            .0,
        StatusCode::UNAUTHORIZED,
        "bad"
    );
    let mut changed = body.clone();
    changed.extend_from_slice(b" ");
    assert_eq!(
        call(&s.state, hook("issues", changed, Some(sign(HOOK_SECRET, &body))))
            .await
            .0,
        StatusCode::UNAUTHORIZED,
        "replayed with a changed body"
    );
    assert!(
        s.trigger_rx.try_recv().is_err(),
        "nothing triggered by rejected deliveries"
    );

    let check = fixture("check_run.completed");
    assert_eq!(
        call(
            &s.state,
            hook("check_run", check.clone(), Some(sign(HOOK_SECRET, &check)))
        )
        .await
        .0,
        StatusCode::ACCEPTED
    );
    // A CI event looks at the repository's open runs (r1 is Working; r2 is Frozen: terminal).
    let Trigger::Run(run) = s.trigger_rx.try_recv().unwrap() else {
        panic!("a check_run event triggers the run, not a poll")
    };
    assert_eq!((run.name.as_str(), run.namespace.as_deref()), ("r1", Some("afk")));
    assert!(s.trigger_rx.try_recv().is_err(), "only the open run");
    let star = fixture("star.created");
    let (status, resp) = call(
        &s.state,
        hook("star", star.clone(), Some(sign(HOOK_SECRET, &star))),
    )
    .await;
    assert_eq!(
        (status, resp["ignored"].as_str()),
        (StatusCode::ACCEPTED, Some("star"))
    );
}

#[tokio::test]
async fn ping_is_answered_for_an_enrolled_secret() {
    let s = setup(false, true);
    // The ping example's repository is not enrolled: only configs enrolling it are candidates.
    let ping = fixture("ping");
    assert_eq!(
        call(
            &s.state,
            hook("ping", ping.clone(), Some(sign(HOOK_SECRET, &ping)))
        )
        .await
        .0,
        StatusCode::UNAUTHORIZED
    );
    let mut p: Value = serde_json::from_slice(&ping).unwrap();
    p["repository"]["full_name"] = json!("Codertocat/Hello-World");
    let body = serde_json::to_vec(&p).unwrap();
    assert_eq!(
        call(
            &s.state,
            hook("ping", body.clone(), Some(sign(HOOK_SECRET, &body)))
        )
        .await
        .0,
        StatusCode::OK
    );
}
