//! Honest status at process level (issue: what kubectl, Argo CD and the alerts show is true when
//! things break): the real binary against the fake API server and the contract fakes, for a
//! wrong GitHub token, an unreachable T3, a revoked T3 token, missing and unreadable Secrets, a
//! token about to expire, a disarmed loop and a healthy one. Each asserts the conditions, the
//! Events `kubectl describe` shows, the `kubectl get` table (served by the fake API server from
//! the CRD's printer columns) and Argo CD's verdict from the shipped Lua.

mod support;

use afk_testkit::apiserver::{ApiFault, ApiFaultAction};
use serde_json::json;
use support::{argo::config_health, process::*, *};

/// Serve the API, apply the config, start the binary; returns what must live as long as the test.
async fn boot(w: &World, extra: serde_json::Value) -> (afk_testkit::apiserver::ServedApi, Operator) {
    let mut served = w.api.serve().await;
    let kubeconfig = served.kubeconfig();
    w.apply_config(extra).await;
    let operator = spawn_operator(&kubeconfig, free_port());
    (served, operator)
}

async fn wait_condition(w: &World, type_: &str, status: &str, reason: &str) -> String {
    w.wait_for(&format!("{type_}={status} ({reason})"), |w| {
        w.config_condition(type_)
            .is_some_and(|(s, r, _)| s == status && r == reason)
    })
    .await;
    w.config_condition(type_).unwrap().2
}

async fn config_row(
    served: &afk_testkit::apiserver::ServedApi,
) -> serde_json::Map<String, serde_json::Value> {
    table(&served.url(), "afkconfigs").await.remove(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_github_token_is_not_ready_and_argo_says_degraded() {
    let w = World::new().await;
    w.set_secret("gh", "ghp_wrong");
    let (served, _op) = boot(&w, json!({})).await;
    let message = wait_condition(&w, "Ready", "False", "Unauthorized").await;
    assert!(message.starts_with("GitHub: "), "{message}");
    assert_eq!(w.config_condition("TrackerReachable").unwrap().1, "Unauthorized");
    assert_eq!(w.config_condition("ExecutorReachable").unwrap().0, "True");
    let row = config_row(&served).await;
    assert_eq!(row["Ready"], "False");
    assert_eq!(row["Armed"], "True");
    assert_eq!(row["Message"], json!(message));
    assert_eq!(config_health(&w.config_obj()).0, "Degraded");
    w.wait_for("a Warning Event", |w| {
        w.events_for("AfkConfig", "team")
            .iter()
            .any(|(t, r, n)| t == "Warning" && r == "Unauthorized" && n.starts_with("Ready=False"))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_t3_is_not_ready() {
    let w = World::new().await;
    let closed = format!("http://127.0.0.1:{}", free_port());
    let (served, _op) = boot(&w, json!({"executor": {"t3": {"url": closed}}})).await;
    let message = wait_condition(&w, "ExecutorReachable", "False", "Unreachable").await;
    assert!(message.contains("connection failed"), "{message}");
    wait_condition(&w, "Ready", "False", "Unreachable").await;
    assert_eq!(config_row(&served).await["Ready"], "False");
    assert_eq!(config_health(&w.config_obj()).0, "Degraded");
}

/// A revoked T3 token: the config says so (validated with `/api/auth/session`, not only the
/// unauthenticated well-known endpoint), and the run it held ends Failed and frees its repo.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_t3_token_shows_on_the_config_and_fails_its_run() {
    let w = World::new().await;
    w.label_issue(42, "Do it", "alice");
    let (served, _op) = boot(&w, json!({})).await;
    wait_condition(&w, "Ready", "True", "Ready").await;
    w.wait_phase("acme-app-42-1", afk_operator::crd::Phase::Working)
        .await;
    w.t3.revoke_token(T3_TOKEN);
    w.wait_phase("acme-app-42-1", afk_operator::crd::Phase::Failed)
        .await;
    w.wait_bells(&["acme/app#42 failed"]).await;
    w.wait_labels(42, &["ready-for-human"]).await;
    let message = wait_condition(&w, "ExecutorReachable", "False", "Unauthorized").await;
    assert!(message.contains("authenticated: false"), "{message}");
    wait_condition(&w, "Ready", "False", "Unauthorized").await;
    assert_eq!(config_health(&w.config_obj()).0, "Degraded");
    let runs = table(&served.url(), "afkruns").await;
    assert_eq!(runs[0]["Phase"], "Failed");
    assert_eq!(
        support::argo::argo_health(support::argo::AFKRUN_SCRIPT, &w.run_obj("acme-app-42-1").unwrap()).0,
        "Degraded"
    );
}

/// Every missing Secret named at once (not one per poll), before anyone arms the loop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_secrets_are_all_named_at_once_and_armed_is_never_true() {
    let w = World::new().await;
    let (served, _op) = boot(
        &w,
        json!({"tracker": {"github": {"tokenSecretRef": {"name": "gh-missing", "key": "token"}}},
               "executor": {"t3": {"tokenSecretRef": {"name": "t3-missing", "key": "token"}}}}),
    )
    .await;
    let message = wait_condition(&w, "Stalled", "True", "SecretMissing").await;
    assert!(
        message.contains("\"gh-missing\"") && message.contains("\"t3-missing\""),
        "{message}"
    );
    assert_eq!(w.config_condition("Armed").unwrap().0, "False");
    let row = config_row(&served).await;
    assert_eq!(
        (row["Ready"].as_str(), row["Armed"].as_str()),
        (Some("False"), Some("False"))
    );
    assert_eq!(row["Message"], json!(message));
    assert_eq!(config_health(&w.config_obj()).0, "Degraded");
    assert!(
        w.gh.with(|s| s.requests.is_empty()),
        "no tracker I/O while stalled"
    );
}

/// A Secret the operator may not read (RBAC 403) is reported in status, with what to do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_secret_says_to_add_it_to_secret_names() {
    let w = World::new().await;
    w.api.with_store(|s| {
        s.inject(ApiFault {
            method: Some("GET".into()),
            path_contains: "/secrets/t3".into(),
            query_contains: None,
            action: ApiFaultAction::Status(403),
            remaining: 100_000,
        })
    });
    let (_served, _op) = boot(&w, json!({})).await;
    let message = wait_condition(&w, "Stalled", "True", "SecretUnreadable").await;
    assert!(
        message.contains("secretNames") && message.contains("\"t3\""),
        "{message}"
    );
    assert_eq!(config_health(&w.config_obj()).0, "Degraded");
    w.wait_for("the Event", |w| {
        w.events_for("AfkConfig", "team")
            .iter()
            .any(|(t, r, _)| t == "Warning" && r == "SecretUnreadable")
    })
    .await;
}

/// Healthy: Ready, Argo CD Healthy. A token inside its last 7 days: a Warning naming the mint
/// command, still Ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_config_is_ready_and_an_expiring_token_is_warned() {
    let w = World::new().await;
    let (served, _op) = boot(&w, json!({})).await;
    wait_condition(&w, "Ready", "True", "Ready").await;
    assert_eq!(config_health(&w.config_obj()).0, "Healthy");
    let row = config_row(&served).await;
    assert_eq!(row["Ready"], "True");
    assert_eq!(row["Message"], json!(null));
    let soon = jiff::Timestamp::now()
        .checked_add(jiff::SignedDuration::from_hours(72))
        .unwrap();
    w.t3.set_token_expiry(T3_TOKEN, &soon.to_string());
    w.poll_now().await;
    let message = wait_condition(&w, "TokenExpiring", "True", "TokenExpiresSoon").await;
    assert!(message.contains("t3 auth session issue"), "{message}");
    assert_eq!(w.config_condition("Ready").unwrap().0, "True");
    w.wait_for("the Warning Event", |w| {
        w.events_for("AfkConfig", "team")
            .iter()
            .any(|(t, r, _)| t == "Warning" && r == "TokenExpiresSoon")
    })
    .await;
}

/// Disarmed on purpose: not Ready, but Argo CD shows Suspended, not Degraded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_suspended_config_is_suspended_not_degraded() {
    let w = World::new().await;
    let (served, _op) = boot(&w, json!({"suspend": true})).await;
    wait_condition(&w, "Ready", "False", "Suspended").await;
    assert_eq!(config_health(&w.config_obj()).0, "Suspended");
    assert_eq!(config_row(&served).await["Message"], "spec.suspend is true");
}
