//! The sidecar's authenticated AFK operations and the GitHub webhook, driven in process through
//! the axum router against the fake API server: bearer auth edge cases and token rotation, the
//! grouped runs view (no command ids), the emergency-stop round trip, and webhook signatures
//! (good, bad, missing, body changed) with the official example payloads.

use std::sync::{Arc, atomic::AtomicBool};

use afk_operator::controller::Trigger;
use afk_operator::{
    args::{Routes, SidecarArgs},
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
    setup_with(trust_proxy_header, with_token, None)
}

fn setup_with(trust_proxy_header: bool, with_token: bool, webhook_refresh_secs: Option<u64>) -> Setup {
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
    if let Some(secs) = webhook_refresh_secs {
        argv.extend(["--webhook-secret-refresh-secs".into(), secs.to_string()]);
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
    // The scheme is case-insensitive (RFC 7235).
    for good in [
        bearer.clone(),
        format!("bearer {TOKEN}"),
        format!("BEARER  {TOKEN}"),
    ] {
        assert_eq!(
            call(&s.state, get("/api/afk/runs", Some(&good))).await.0,
            StatusCode::OK,
            "{good}"
        );
    }
    for bad in [
        None,
        Some(String::new()),
        Some("Bearer ".to_string()),
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

/// The setup with its webhook secrets loaded from the fake API server.
async fn setup_hooks(refresh_secs: Option<u64>) -> Setup {
    let s = setup_with(false, true, refresh_secs);
    s.state.webhook.as_ref().unwrap().wait_loaded().await;
    s
}

#[tokio::test]
async fn webhook_signatures_and_triggers() {
    let mut s = setup_hooks(None).await;
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
    let s = setup_hooks(None).await;
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

/// Serve `state` on loopback; the base URL and the server's stop switch.
async fn serve(state: &SidecarState) -> (String, tokio::sync::oneshot::Sender<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(afk_operator::sidecar::serve_on(
        listener,
        state.clone(),
        std::time::Duration::from_secs(5),
        async move {
            let _ = stopped.await;
        },
    ));
    (base, stop)
}

/// `run --routes controller` (the chart's controller container) serves health, metrics, the AFK
/// operations API and the webhook, and answers the CLI-spawning routes with a JSON 404; the full
/// router (the `sidecar` container) still serves them.
#[tokio::test]
async fn controller_routes_leave_the_cli_routes_to_the_sidecar_container() {
    let s = setup(false, true);
    let bearer = format!("Bearer {TOKEN}");
    let client = reqwest::Client::new();
    let (controller, _stop_controller) = serve(&s.state.clone().with_routes(Routes::Controller)).await;
    let (full, _stop_full) = serve(&s.state).await;

    let chat = json!({"model": "sonnet", "messages": [{"role": "user", "content": "hi"}]});
    let resp = client
        .post(format!("{controller}/v1/chat/completions"))
        .header("authorization", &bearer)
        .json(&chat)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json")
    );
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "not_found", "{body}");

    for path in [
        "/v1/models",
        "/api/breakglass/sessions",
        "/api/breakglass/pve/verbs",
        "/console/",
    ] {
        let resp = client
            .get(format!("{controller}{path}"))
            .header("authorization", &bearer)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::NOT_FOUND, "{path}");
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["error"]["code"], "not_found", "{path}: {body}");
        let resp = client
            .get(format!("{full}{path}"))
            .header("authorization", &bearer)
            .send()
            .await
            .unwrap();
        assert_ne!(resp.status(), StatusCode::NOT_FOUND, "{path} on the full router");
    }
    let resp = client
        .post(format!("{controller}/api/breakglass/pve/reset"))
        .header("authorization", &bearer)
        .json(&json!({"confirm": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);

    let resp = client
        .get(format!("{controller}/api/afk/runs"))
        .header("authorization", &bearer)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let body: Value = resp.json().await.unwrap();
    assert!(body["inProgress"].is_array(), "{body}");
    let resp = client
        .get(format!("{controller}/api/afk/runs"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    for path in ["/healthz", "/readyz", "/metrics"] {
        let resp = client.get(format!("{controller}{path}")).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "{path}");
    }
    let body = b"{}".to_vec();
    let resp = client
        .post(format!("{controller}/webhooks/github"))
        .header("x-github-event", "ping")
        .header("x-hub-signature-256", "sha256=00")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_ne!(resp.status(), StatusCode::NOT_FOUND, "the webhook is served");
}

/// API requests other than the cache's own long-running AfkConfig watch.
fn api_requests(api: &FakeApiServer) -> Vec<String> {
    api.with_store(|st| {
        st.log
            .iter()
            .filter(|r| !r.query.contains("watch=true"))
            .map(|r| format!("{} {}?{}", r.method, r.path, r.query))
            .collect()
    })
}

async fn deliver(
    base: &str,
    event: &str,
    delivery: Option<&str>,
    body: Vec<u8>,
    signature: &str,
) -> (u16, Value) {
    let mut req = reqwest::Client::new()
        .post(format!("{base}/webhooks/github"))
        .header("x-github-event", event)
        .header("content-type", "application/json")
        .header("x-hub-signature-256", signature);
    if let Some(d) = delivery {
        req = req.header("x-github-delivery", d);
    }
    let resp = req.body(body).send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn forged_deliveries_cost_no_api_call_and_valid_ones_no_secret_read() {
    let mut s = setup_hooks(None).await;
    let (base, _stop) = serve(&s.state).await;
    let before = api_requests(&s.api).len();

    // A 4 MiB forgery, a malformed signature and an unsigned one: all 401, no API request at all.
    let mut big = fixture("issues.labeled");
    big.resize(4 * 1024 * 1024, b' ');
    let (status, body) = deliver(&base, "issues", Some("f-1"), big.clone(), &sign("guess", &big)).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (401, Some("unauthorized"))
    );
    let (status, _) = deliver(&base, "issues", None, big.clone(), "sha256=nothex").await;
    assert_eq!(status, 401);
    let (status, _) = deliver(&base, "issues", None, big.clone(), "").await;
    assert_eq!(status, 401);
    // Over the limit by its Content-Length: 413 in the JSON error shape, body never read.
    let mut huge = big.clone();
    huge.resize(6 * 1024 * 1024, b' ');
    let (status, body) = deliver(&base, "issues", None, huge, &sign(HOOK_SECRET, b"x")).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (413, Some("payload_too_large"))
    );
    assert_eq!(
        api_requests(&s.api)[before..],
        [] as [String; 0],
        "rejected deliveries reach no API"
    );

    // An authentic issue delivery triggers the config without reading a Secret or listing configs.
    let body = fixture("issues.labeled");
    let (status, resp) = deliver(
        &base,
        "issues",
        Some("d-1"),
        body.clone(),
        &sign(HOOK_SECRET, &body),
    )
    .await;
    assert_eq!((status, resp["triggered"].clone()), (202, json!(["team"])));
    assert!(matches!(s.trigger_rx.try_recv(), Ok(Trigger::Config(_))));
    assert_eq!(api_requests(&s.api)[before..], [] as [String; 0]);

    // The same delivery id again: acknowledged, ignored, nothing triggered.
    let (status, resp) = deliver(
        &base,
        "issues",
        Some("d-1"),
        body.clone(),
        &sign(HOOK_SECRET, &body),
    )
    .await;
    assert_eq!((status, resp["duplicate"].as_str()), (200, Some("d-1")));
    assert!(
        s.trigger_rx.try_recv().is_err(),
        "a repeated delivery triggers nothing"
    );
    // A forged delivery cannot burn a real id: "f-1" was refused above, so it still counts once.
    let (status, _) = deliver(
        &base,
        "issues",
        Some("f-1"),
        body.clone(),
        &sign(HOOK_SECRET, &body),
    )
    .await;
    assert_eq!(status, 202);
}

#[tokio::test]
async fn webhook_secrets_follow_config_changes_and_rotation() {
    let s = setup_hooks(Some(1)).await;
    let (base, _stop) = serve(&s.state).await;
    let body = fixture("issues.labeled");
    // A new Secret and the config pointing at it: taken at once (the config watch), old one refused.
    s.api.with_store(|st| {
        st.seed(json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "gh2", "namespace": "afk"}, "data": {"hook": b64("second")}}));
        st.modify("afk.dev/v1alpha1", "AfkConfig", "afk", "team", |c| {
            c["spec"]["tracker"]["github"]["webhookSecretRef"] = json!({"name": "gh2", "key": "hook"});
        });
    });
    wait_until("the new secret is accepted", || async {
        deliver(&base, "issues", None, body.clone(), &sign("second", &body))
            .await
            .0
            == 202
    })
    .await;
    assert_eq!(
        deliver(&base, "issues", None, body.clone(), &sign(HOOK_SECRET, &body))
            .await
            .0,
        401
    );
    // The Secret's value rotated in place: picked up by the periodic re-read (1 s here).
    s.api.with_store(|st| {
        st.modify("v1", "Secret", "afk", "gh2", |sec| {
            sec["data"]["hook"] = json!(b64("third"));
        });
    });
    wait_until("the rotated secret is accepted", || async {
        deliver(&base, "issues", None, body.clone(), &sign("third", &body))
            .await
            .0
            == 202
    })
    .await;
    assert_eq!(
        deliver(&base, "issues", None, body.clone(), &sign("second", &body))
            .await
            .0,
        401
    );
}

#[tokio::test]
async fn webhooks_wait_for_the_first_load_and_need_a_cluster() {
    let mut s = setup(false, true);
    s.state.webhook = Some(Arc::new(afk_operator::sidecar::webhook::WebhookSecrets::new()));
    let body = fixture("issues.labeled");
    let (status, resp) = call(
        &s.state,
        hook("issues", body.clone(), Some(sign(HOOK_SECRET, &body))),
    )
    .await;
    assert_eq!(
        (status, resp["error"]["code"].as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, Some("unavailable"))
    );
    s.state.cluster = None;
    let (status, _) = call(
        &s.state,
        hook("issues", body.clone(), Some(sign(HOOK_SECRET, &body))),
    )
    .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
}

/// Poll `check` until it holds (10 s at most: a condition, not a fixed sleep).
async fn wait_until<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !check().await {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}
