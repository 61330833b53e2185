//! Woodpecker, Slack, ntfy and the rollout checker over real HTTP against loopback fakes.

use std::{sync::Arc, time::Duration};

use afk_operator::adapters::{
    Secret, StaticSecret,
    notify::{Notifier, NtfyNotifier, Outgoing, SlackNotifier},
    retry::RetryPolicy,
    rollout::{KubeRolloutChecker, RolloutChecker},
    woodpecker::{DeployCi, WoodpeckerClient},
};
use afk_testkit::{notify::FakeNotify, woodpecker::FakeWoodpecker};
use axum::{Router, extract::Path, routing::get};
use serde_json::json;

fn secret(v: &str) -> Arc<StaticSecret> {
    Arc::new(StaticSecret(Secret::new(v)))
}

const FAST: RetryPolicy = RetryPolicy {
    attempts: 3,
    base_delay: Duration::from_millis(1),
    max_delay: Duration::from_millis(5),
};

#[tokio::test]
async fn woodpecker_pipelines_for_a_commit_across_pages() {
    let fake = FakeWoodpecker::start("wp-token").await;
    let sha = "c".repeat(40);
    fake.set_pipeline(7, 1, &sha, "success");
    for n in 2..=80 {
        fake.set_pipeline(7, n, &"0".repeat(40), "success");
    }
    fake.set_pipeline(7, 81, &sha, "running");
    let c = WoodpeckerClient::new(&fake.url(), secret("wp-token"), 3);
    let found = c.pipelines_for_commit(7, &sha).await.unwrap();
    assert_eq!(
        found
            .iter()
            .map(|p| (p.number, p.status.as_str()))
            .collect::<Vec<_>>(),
        vec![(81, "running"), (1, "success")]
    );
    assert_eq!(found[0].url, format!("{}/repos/7/pipeline/81", fake.url()));
    assert_eq!(fake.with(|s| s.requests.len()), 2, "two pages of 50");
    assert!(
        c.pipelines_for_commit(7, &"f".repeat(40))
            .await
            .unwrap()
            .is_empty()
    );
    let err = WoodpeckerClient::new(&fake.url(), secret("bad"), 1)
        .pipelines_for_commit(7, &sha)
        .await
        .unwrap_err();
    assert_eq!((err.kind, err.is_transient()), ("auth", false));
    let err = c.pipelines_for_commit(99, &sha).await.unwrap_err();
    assert_eq!(err.kind, "not_found");
}

fn outgoing() -> Outgoing {
    Outgoing {
        title: "acme/app#42 frozen".into(),
        body: "Retry webhooks — ünïcode body\nReason: FixForwardBudgetExhausted".into(),
        ntfy_priority: 4,
        tags: vec!["ice_cube".into(), "afk".into()],
        click: Some("https://t3.example.com/?thread=t-1".into()),
        slack: json!({"text": ":ice_cube: acme/app#42 frozen", "blocks": []}),
    }
}

#[tokio::test]
async fn slack_delivers_retries_and_keeps_the_url_secret() {
    let fake = FakeNotify::start(None).await;
    let slack = SlackNotifier::new(secret(&fake.slack_url()), FAST);
    fake.with(|s| s.fail_next = vec![429, 503]);
    slack.deliver(&outgoing()).await.unwrap();
    assert_eq!(fake.with(|s| s.slack.len()), 1);
    assert_eq!(fake.with(|s| s.requests.len()), 3, "two retries then success");

    fake.with(|s| s.fail_next = vec![503, 503, 503]);
    let err = slack.deliver(&outgoing()).await.unwrap_err();
    assert!(err.is_transient());
    assert!(
        !err.to_string().contains("secretpart"),
        "the webhook URL is a credential: {err}"
    );

    let bad = Outgoing {
        slack: json!({"blocks": []}),
        ..outgoing()
    };
    let err = slack.deliver(&bad).await.unwrap_err();
    assert_eq!((err.kind, err.status), ("rejected", Some(400)));
}

#[tokio::test]
async fn ntfy_publishes_with_headers_and_token() {
    let fake = FakeNotify::start(Some("ntfy-token")).await;
    let ntfy = NtfyNotifier::new(&fake.ntfy_url(), "afk-doorbell", Some(secret("ntfy-token")), FAST);
    ntfy.deliver(&outgoing()).await.unwrap();
    let (topic, req) = fake.with(|s| s.ntfy[0].clone());
    assert_eq!(topic, "afk-doorbell");
    assert_eq!(req.header("title"), Some("acme/app#42 frozen"));
    assert_eq!(req.header("priority"), Some("4"));
    assert_eq!(req.header("tags"), Some("ice_cube,afk"));
    assert_eq!(req.header("click"), Some("https://t3.example.com/?thread=t-1"));
    assert!(req.body.contains("ünïcode"), "UTF-8 travels in the body");
    let unauth = NtfyNotifier::new(&fake.ntfy_url(), "afk-doorbell", None, FAST);
    let err = unauth.deliver(&outgoing()).await.unwrap_err();
    assert_eq!((err.kind, err.is_transient()), ("auth", false));
}

/// A minimal API server for one Deployment and its Pods.
async fn kube_fake(
    deployment: serde_json::Value,
    pods: serde_json::Value,
) -> (afk_testkit::Served, kube::Client) {
    let d = deployment.clone();
    let router = Router::new()
        .route(
            "/apis/apps/v1/namespaces/{ns}/deployments/{name}",
            get(move |Path((_ns, name)): Path<(String, String)>| {
                let d = d.clone();
                async move {
                    if d["metadata"]["name"] == name.as_str() {
                        (axum::http::StatusCode::OK, axum::Json(d))
                    } else {
                        (axum::http::StatusCode::NOT_FOUND, axum::Json(json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404, "message": "not found"})))
                    }
                }
            }),
        )
        .route("/api/v1/namespaces/{ns}/pods", get(move || {
            let p = pods.clone();
            async move { axum::Json(p) }
        }));
    let served = afk_testkit::serve(router).await;
    let config = kube::Config::new(served.url().parse().unwrap());
    (served, kube::Client::try_from(config).unwrap())
}

#[tokio::test]
async fn rollout_checker_reads_the_deployment_and_crashlooping_pods() {
    let deployment = json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "app", "namespace": "app", "generation": 4},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "app"}},
                 "template": {"metadata": {"labels": {"app": "app"}, "annotations": {"afk.dev/commit": "abc1234"}},
                              "spec": {"containers": [{"name": "app", "image": "ghcr.io/acme/app:abc1234"}, {"name": "sidecar", "image": "envoy:1"}]}}},
        "status": {"observedGeneration": 4, "replicas": 3, "updatedReplicas": 2, "availableReplicas": 1,
                   "conditions": [{"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded"}]}
    });
    let pods = json!({"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": [
        {"metadata": {"name": "app-1"}, "status": {"containerStatuses": [
            {"name": "app", "image": "ghcr.io/acme/app:abc1234", "imageID": "", "ready": false, "restartCount": 5,
             "state": {"waiting": {"reason": "CrashLoopBackOff"}}}]}}
    ]});
    let (_served, client) = kube_fake(deployment, pods).await;
    let checker = KubeRolloutChecker::new(client);
    let state = checker.deployment_state("app", "app", Some("app")).await.unwrap();
    assert!(state.exists);
    assert_eq!(
        state.images,
        vec!["ghcr.io/acme/app:abc1234"],
        "only the named container"
    );
    assert_eq!(state.commit_annotation.as_deref(), Some("abc1234"));
    assert_eq!(
        (state.generation, state.observed_generation, state.replicas),
        (4, 4, 2)
    );
    assert_eq!(
        (
            state.updated_replicas,
            state.available_replicas,
            state.total_replicas
        ),
        (2, 1, 3)
    );
    assert!(state.progress_deadline_exceeded);
    assert_eq!(state.failing_pod_images, vec!["ghcr.io/acme/app:abc1234"]);
    let all = checker.deployment_state("app", "app", None).await.unwrap();
    assert_eq!(all.images.len(), 2);
    let missing = checker.deployment_state("app", "other", None).await.unwrap();
    assert!(!missing.exists);
}
